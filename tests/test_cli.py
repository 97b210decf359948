"""The nextbest command line: what people type and what they see, including mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    result = run("data", "generate", "--events", "2000", "--seed", "5", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    return tmp_path


def test_generate_fills_the_warehouse_and_records_the_ground_truth(generated):
    assert (generated / "warehouse" / "items.parquet").exists()
    assert list((generated / "warehouse" / "events").glob("part-*.parquet"))
    tastes = pd.read_parquet(generated / "synthetic" / "customer_tastes.parquet")
    assert tastes.sum(axis=1).round(6).eq(1).all()


def test_summary_shows_sizes_funnel_and_channels(generated):
    result = run("data", "summary", "--data-dir", str(generated))
    assert result.exit_code == 0
    for heading in ("events by type", "channels", "purchases by top-level category"):
        assert heading in result.output
    assert "add_to_cart" in result.output


def test_summary_of_an_empty_warehouse_says_what_to_do(tmp_path):
    result = run("data", "summary", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "is empty; run 'nextbest data generate'" in result.output


def test_validate_lists_problems_and_exits_1(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,buy,2024-05-01T12:00:00Z,web\n")
    result = run("data", "validate", str(path), "--table", "events")
    assert result.exit_code == 1
    assert "row 1, column 'event_type': got 'buy'" in " ".join(result.output.split())


def test_validate_of_a_good_file_exits_0(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,view,2024-05-01T12:00:00Z,web\n")
    result = run("data", "validate", str(path), "--table", "events")
    assert result.exit_code == 0 and "no problems" in result.output


def test_an_unknown_table_is_a_usage_error(tmp_path):
    result = run("data", "validate", str(tmp_path / "x.csv"), "--table", "orders")
    assert result.exit_code == 2
    assert "orders" in result.output


def test_importing_a_missing_file_is_one_clear_line(tmp_path):
    result = run("data", "import", "events", str(tmp_path / "nope.csv"),
                 "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "nope.csv: no such file" in result.output
    assert "Traceback" not in result.output


def test_an_event_file_with_a_future_date_is_refused_and_says_why(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,view,2030-01-01T00:00:00Z,web\n")
    result = run("data", "import", "events", str(path), "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "row 1, column 'timestamp': got '2030-01-01T00:00:00Z', expected a time no later " \
           "than" in output and "NEXTBEST_FUTURE_TOLERANCE_MINUTES" in output


def test_features_are_never_built_as_of_a_time_to_come(generated):
    result = run("features", "build", "--cutoff", "2999-01-01", "--data-dir", str(generated))
    assert result.exit_code == 2
    assert "--cutoff 2999-01-01T00:00:00+00:00 is in the future" in " ".join(result.output.split())


def test_importing_with_quarantine_reports_where_bad_rows_went(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,view,2024-05-01T12:00:00Z,web\n"
                    "e2,c1,p1,buy,2024-05-01T12:00:00Z,web\n")
    result = run("data", "import", "events", str(path), "--on-error", "quarantine",
                 "--data-dir", str(tmp_path))
    assert result.exit_code == 0
    assert "events: 1 new, 0 already stored" in result.output
    assert "quarantined 1 row(s)" in result.output


def test_importing_transactions_with_map_options_nets_returns(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("inv,sku,qty,when,unit,cust\n1,A,2,2024-01-01T10:00:00Z,3.5,k1\n"
                    "1,B,3,2024-01-01T10:00:00Z,3.5,k1\n2,B,-1,2024-01-02T10:00:00Z,3.5,k1\n")
    result = run("data", "import", "transactions", str(path), *MAP_ARGS, "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "netted 1 cancellation or return line(s) against earlier purchases: 0 purchase " \
           "line(s) removed, 1 reduced" in " ".join(result.output.split())
    assert "stored: 2 new events" in result.output
    assert "warning" not in result.output


MAP_ARGS = ["--map", "invoice=inv", "--map", "item=sku", "--map", "quantity=qty",
            "--map", "timestamp=when", "--map", "price=unit", "--map", "customer=cust"]


def test_a_transaction_import_that_skips_most_rows_warns_with_examples(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("inv,sku,qty,when,unit,cust\n1,A,2,2024-01-01T10:00:00Z,3.5,k1\n"
                    "2,B,1,01/02/2024,3.5,k1\n3,C,1,01/03/2024,3.5,k1\n")
    result = run("data", "import", "transactions", str(path), *MAP_ARGS, "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "skipped 2 row(s): 'when' is not a date (e.g. '01/02/2024', '01/03/2024')" in output
    assert "warning: 67% of the rows were skipped (more than NEXTBEST_MAX_SKIPPED_SHARE, 30%)" \
        in output


def test_a_transaction_import_that_imports_nothing_fails(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("inv,sku,qty,when,unit,cust\n1,A,2,01/01/2024 10:00,3.5,k1\n")
    result = run("data", "import", "transactions", str(path), *MAP_ARGS, "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "none of its 1 rows is a sale that can be imported" in " ".join(result.output.split())
    assert not (tmp_path / "warehouse" / "events").exists()


def test_non_product_codes_are_excluded_from_the_command_line(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("inv,sku,qty,when,unit,cust\n1,A,2,2024-01-01T10:00:00Z,3.5,k1\n"
                    "1,POST,1,2024-01-01T10:00:00Z,18,k1\n")
    result = run("data", "import", "transactions", str(path), *MAP_ARGS, "--exclude-item", "POST",
                 "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "skipped 1 row(s): not a product (item code matches exclude_items) (e.g. 'POST')" \
        in " ".join(result.output.split())


def test_a_malformed_map_option_is_explained(tmp_path):
    result = run("data", "import", "transactions", str(tmp_path / "x.csv"), "--map", "item",
                 "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--map 'item': expected field=Column" in result.output


def test_features_build_writes_one_row_per_customer_and_cutoff(generated):
    out = generated / "f.parquet"
    result = run("features", "build", "--cutoff", "2024-03-01T00:00:00Z",
                 "--cutoff", "2024-04-01", "--out", str(out), "--data-dir", str(generated))
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert sorted(table["cutoff"].unique()) == [pd.Timestamp("2024-03-01", tz="UTC"),
                                                pd.Timestamp("2024-04-01", tz="UTC")]
    assert not table.duplicated(["customer_id", "cutoff"]).any()
    assert (out.parent / "item_features.parquet").exists()


def test_features_build_rejects_a_cutoff_that_is_not_a_time(generated):
    result = run("features", "build", "--cutoff", "yesterday-ish", "--data-dir", str(generated))
    assert result.exit_code == 2
    assert "--cutoff 'yesterday-ish' is not a time" in result.output


def test_generate_refuses_both_size_options(tmp_path):
    result = run("data", "generate", "--events", "1000", "--customers", "10",
                 "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "give --events or --customers, not both" in result.output


def test_generate_refuses_an_absurd_size(tmp_path):
    result = run("data", "generate", "--events", "5", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--events" in result.output
    assert "greater than or equal to 100" in " ".join(result.output.split())


# ---------------------------------------------------------------------------- the command itself
def test_the_version_is_printed():
    from importlib import metadata

    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"nextbest {metadata.version('nextbest')}"


def test_help_texts_keep_their_bracketed_parts():
    assert "[default: $NEXTBEST_DATA_DIR or .nextbest]" in " ".join(
        run("data", "summary", "--help").output.split())
    assert "TOML file with a [mapping] table" in " ".join(
        run("data", "import", "transactions", "--help").output.split())


def test_contract_imports_show_only_their_own_options():
    output = run("data", "import", "events", "--help").output
    assert "--on-error" in output and "--data-dir" in output
    assert "table" not in output.replace("(see docs/data.md)", "").split("Options:")[1]


def test_loading_the_command_line_loads_no_data_model_or_serving_library():
    """What makes `nextbest --help` answer at once: commands import what they use when run."""
    import subprocess
    import sys

    probe = ("import sys, serving.cli; heavy = {'pandas', 'pyarrow', 'duckdb', 'mlflow', "
             "'bentoml', 'sklearn', 'lightgbm', 'implicit', 'numba', 'matplotlib'}; "
             "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_serving_on_a_busy_port_says_so_and_fails(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert f"port {port} is in use by another program" in " ".join(result.output.split())
    assert "serving on" not in result.output


# ---------------------------------------------------------------------------- real time
@pytest.fixture
def realtime_env(tmp_path, monkeypatch):
    from features.settings import get_settings

    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_policy_show_prints_caps_quiet_hours_and_triggers(realtime_env):
    result = run("policy", "show")
    assert result.exit_code == 0
    assert "quiet hours: 21:00-08:00 Europe/London" in result.output
    assert "no triggers" in result.output  # the shipped ones are journeys now
    (realtime_env / "policy.yaml").write_text(
        "triggers:\n  - {name: cart, when: cart_abandoned, action: offer, channels: [email]}\n")
    assert "cart: on a cart idle 30 minutes" in run("policy", "show").output


def test_a_policy_file_in_the_data_dir_takes_over_and_its_mistakes_are_named(realtime_env):
    (realtime_env / "policy.yaml").write_text("caps:\n  email: {max: two, per_days: 7}\n")
    result = runner.invoke(app, ["policy", "show"])
    assert result.exit_code == 2
    assert "caps.email.max" in result.output and "policy.yaml" in result.output


def test_the_real_time_commands_take_a_data_dir(tmp_path):
    (tmp_path / "policy.yaml").write_text("caps:\n  sms: {max: 9, per_days: 2}\n")
    shown = run("policy", "show", "--data-dir", str(tmp_path))
    unwrapped = "".join(shown.output.split())  # the console wraps a long path anywhere
    assert shown.exit_code == 0 and f"from{tmp_path / 'policy.yaml'}" in unwrapped
    assert "│ sms     │ 9       │ 2 days │" in shown.output
    assert run("events", "flush", "--data-dir", str(tmp_path)).exit_code == 0
    assert (tmp_path / "online.db").exists()
    assert run("journeys", "outbox", "--data-dir", str(tmp_path)).exit_code == 0


def test_events_flush_moves_ingested_events_to_the_warehouse(realtime_env):
    from features.ingest import parse_events
    from features.online import open_online_store
    from features.settings import get_settings
    from features.warehouse import Warehouse

    parsed = parse_events([{"event_id": f"e{i}", "customer_id": "c1", "item_id": "p1",
                            "event_type": "view", "timestamp": "2026-01-01T10:00:00Z",
                            "channel": "web"} for i in range(3)])
    open_online_store(get_settings()).ingest(parsed.events)
    result = run("events", "flush")
    assert result.exit_code == 0 and "moved 3 event(s)" in result.output
    assert len(Warehouse(realtime_env / "warehouse").events()) == 3


def test_the_outbox_lists_decisions_as_json_lines(realtime_env):
    from features.online import open_online_store
    from features.settings import get_settings

    open_online_store(get_settings()).record_decision(
        {"firing_key": "k", "customer_id": "c1", "trigger": "cart", "channel": "email",
         "items": [{"item_id": "o1"}], "reason": "r", "created_at": "2026-01-01T10:00:00"}, 0.0)
    result = run("journeys", "outbox", "--json")
    assert result.exit_code == 0
    assert '"position": "1"' in result.output and '"customer_id": "c1"' in result.output


# ---------------------------------------------------------------------------- events delete
def stored_events(data_dir: Path) -> pd.DataFrame:
    from features.warehouse import Warehouse

    return Warehouse(data_dir / "warehouse").events()


def test_delete_removes_the_matching_events_and_keeps_them_aside(generated):
    before = stored_events(generated)
    customer = before["customer_id"].iloc[0]
    result = run("events", "delete", "--customer", customer, "--yes", "--data-dir", str(generated))
    assert result.exit_code == 0, result.output
    after = stored_events(generated)
    removed = int((before["customer_id"] == customer).sum())
    assert len(after) == len(before) - removed and customer not in set(after["customer_id"])
    [kept] = (generated / "warehouse" / "deleted").glob("events-*.parquet")
    assert len(pd.read_parquet(kept)) == removed
    log = (generated / "warehouse" / "deletions.jsonl").read_text().splitlines()
    assert f'"removed": {removed}' in log[0] and customer in log[0]


def test_delete_by_time_range_and_event_id_needs_both_to_match(generated):
    before = stored_events(generated).sort_values("timestamp")
    first = before.iloc[0]
    result = run("events", "delete", "--event-id", first["event_id"], "--from",
                 (first["timestamp"] + pd.Timedelta(days=1)).isoformat(), "--yes",
                 "--data-dir", str(generated))
    assert "0 stored event(s) match" in result.output
    assert len(stored_events(generated)) == len(before)


def test_a_dry_run_counts_and_changes_nothing(generated):
    before = stored_events(generated)
    last = before["timestamp"].max()
    result = run("events", "delete", "--from", last.isoformat(), "--dry-run",
                 "--data-dir", str(generated))
    assert result.exit_code == 0
    assert f"{int((before['timestamp'] >= last).sum())} stored event(s) match; nothing was " \
           "changed" in result.output
    assert len(stored_events(generated)) == len(before)


def test_delete_without_a_condition_is_refused(generated):
    result = run("events", "delete", "--yes", "--data-dir", str(generated))
    assert result.exit_code == 2
    assert "say which events to delete" in " ".join(result.output.split())


def test_delete_asks_before_it_deletes(generated):
    before = stored_events(generated)
    result = runner.invoke(app, ["events", "delete", "--customer", before["customer_id"].iloc[0],
                                 "--data-dir", str(generated)], input="n\n")
    assert result.exit_code == 1 and "nothing was deleted" in result.output
    assert len(stored_events(generated)) == len(before)


@pytest.mark.parametrize("protocol", ["time", "stratified", "leave_last_out"])
def test_evaluate_runs_each_protocol_and_says_how_many_customers_it_evaluated(generated,
                                                                             protocol):
    result = run("evaluate", "--model", "popularity", "--protocol", protocol, "--k", "5",
                 "--k", "20", "--data-dir", str(generated), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["split"]["split"] == protocol
    for view in set(body["metrics"]):  # a view with nobody to evaluate says why instead
        assert set(body["metrics"][view]) == {"5", "20"}
        assert body["metrics"][view]["20"]["customers_evaluated"] >= 1
        assert 0 <= body["metrics"][view]["20"]["recall@20"] <= 1
    assert set(body["metrics"]) | set(body["not_evaluated"]) == {"new_items", "all_items"}
    assert "all_items" in body["metrics"]


def test_evaluate_names_a_wrong_protocol_and_the_right_ones(generated):
    result = run("evaluate", "--protocol", "random", "--data-dir", str(generated))
    assert result.exit_code == 2
    assert "unknown protocol 'random'; expected one of: time, stratified, leave_last_out" in \
        result.output
