"""Reference data: the operator's catalogue of agencies and procedures."""

from __future__ import annotations

import json

import pytest

from opscentre.catalogue import CatalogueError, load_catalogue
from producers.simulator import AGENCIES
from streams.processor import UNKNOWN_AGENCY
from tests.test_processor import TOPIC, MemorySink, processor


def write(tmp_path, text: str) -> str:
    path = tmp_path / "catalogue.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_default_catalogue_knows_the_simulated_agencies():
    catalogue = load_catalogue(None)
    assert all(catalogue.knows_agency("01", agency) for agency in AGENCIES)
    assert not catalogue.knows_agency("01", "SO-MOI")
    assert catalogue.agency_name("79", "STP") == "Sở Tư pháp"


def test_operator_catalogue_with_procedures_per_province(tmp_path):
    catalogue = load_catalogue(write(tmp_path, (
        "\ufeffprovince,agency_code,agency_name,procedure_code,procedure_name,service_level\n"
        "01,STP,Sở Tư pháp,1.004227,Cấp Phiếu lý lịch tư pháp,full_online\n"
        "01,STP,Sở Tư pháp,2.000635,Thủ tục khác,partial_online\n"
        ",UBND-XA,Ủy ban nhân dân cấp xã,,,\n"
    )))
    assert catalogue.knows_agency("01", "STP") and not catalogue.knows_agency("79", "STP")
    assert catalogue.knows_agency("79", "UBND-XA")
    assert not catalogue.knows_agency("01", "CAT")  # the operator's list replaces the default one
    assert [(p.code, p.service_level) for p in catalogue.procedures_of("01")] == [
        ("1.004227", "full_online"), ("2.000635", "partial_online")]


@pytest.mark.parametrize("text, message", [
    ("code,name\n01,x\n", "no 'agency_code' column"),
    ("agency_code,procedure_code,service_level\nSTP,1.1,toan_trinh\n", "line 2: service_level 'toan_trinh'"),
    ("agency_code\n\n ,\n", "empty agency_code"),
])
def test_bad_catalogue_names_file_and_line(tmp_path, text, message):
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(write(tmp_path, text))
    with pytest.raises(CatalogueError, match="No such file"):
        load_catalogue(str(tmp_path / "missing.csv"))


def test_worker_counts_events_of_unknown_agencies(tmp_path):
    catalogue = load_catalogue(write(tmp_path, "province,agency_code\n01,STP\n,CAT\n"))
    proc = processor(MemorySink(), catalogue=catalogue)
    before = {p: UNKNOWN_AGENCY.labels(p)._value.get() for p in ("01", "79")}
    events = []
    for n, (province, agency) in enumerate([("01", "STP"), ("79", "STP"), ("01", "CAT"), ("01", "SO-MOI"),
                                            ("79", "SO-MOI"), ("79", "SO-MOI")]):
        events.append({"event_id": f"e{n}", "event_type": "document.exchanged", "occurred_at": 1_795_000_000_000,
                       "province": province, "agency": agency, "source": "t", "document_id": f"d{n}",
                       "direction": "sent"})
    proc.process(TOPIC, 0, 0, 1_795_000_000_000, json.dumps(events).encode())
    after = {p: UNKNOWN_AGENCY.labels(p)._value.get() for p in ("01", "79")}
    assert after["01"] - before["01"] == 1
    assert after["79"] - before["79"] == 3
