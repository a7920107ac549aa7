import pytest

from lakehouse_pipelines.defs.cdc_capture.definitions import capture_request
from lakehouse_pipelines.settings import LakehouseSettings, SettingsError


@pytest.mark.parametrize(
    ("value", "full_document"),
    [(None, "updateLookup"), ("true", "updateLookup"), ("false", "default")],
)
def test_update_lookup_setting_chooses_the_change_streams_full_document(
    tmp_path, value, full_document
):
    environ = {"LAKEHOUSE_ROOT": str(tmp_path)}
    if value is not None:
        environ["LAKEHOUSE_UPDATE_LOOKUP"] = value

    settings = LakehouseSettings.from_env(environ)
    request = capture_request(settings, "shop.orders", reset=False)

    assert request.full_document == full_document
    assert type(request).from_event(request.to_event()).full_document == full_document


def test_update_lookup_setting_refuses_other_values(tmp_path):
    with pytest.raises(SettingsError, match="LAKEHOUSE_UPDATE_LOOKUP"):
        LakehouseSettings.from_env(
            {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_UPDATE_LOOKUP": "sometimes"}
        )
