// The one way a failure becomes text for the page: an ApiError (or any Error) says its message,
// which the client made fit to show (api/client.ts); anything else thrown is shown as it is.

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
