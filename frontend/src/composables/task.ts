// A long operation (certbot, an nginx reload) with the seconds it has been running, so the
// page shows progress instead of a frozen button. One at a time per task.
import { getCurrentInstance, onUnmounted, ref } from 'vue'

export function useTask() {
  const running = ref(false)
  const seconds = ref(0)
  let timer: ReturnType<typeof setInterval> | undefined

  function stop(): void {
    if (timer !== undefined) clearInterval(timer)
    timer = undefined
  }

  async function run<T>(work: () => Promise<T>): Promise<T> {
    running.value = true
    seconds.value = 0
    const started = Date.now()
    stop()
    timer = setInterval(() => {
      seconds.value = Math.floor((Date.now() - started) / 1000)
    }, 250)
    try {
      return await work()
    } finally {
      stop()
      running.value = false
    }
  }

  if (getCurrentInstance()) onUnmounted(stop)
  return { running, seconds, run }
}
