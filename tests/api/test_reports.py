"""services/api/reports.py: the record fields of the api's answers (their names and order are
the wire format, kept there) each name a column of shared/analytics.py's table."""

from services.api.reports import RECORD_COLUMNS
from shared.analytics import COLUMNS


def test_every_record_field_is_an_analytics_column():
    assert [c for c in RECORD_COLUMNS.values() if c not in COLUMNS] == []
    assert list(RECORD_COLUMNS)[:2] == ["startTime", "endTime"]  # the original's two first
