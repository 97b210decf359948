"""Importers for MovieLens, CDNOW and shop transaction exports, on files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.importers import (
    CDNOW_ITEM,
    TransactionMapping,
    import_cdnow,
    import_movielens,
    import_transactions,
)
from features.loading import DataFileError

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250999\n"
U_ITEM = ("242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
          "302|L.A. Confidential (1997)|01-Jan-1997||http://x|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0\n")
U_GENRE = ("unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
           "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\n"
           "Romance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n")

INVOICES = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,12/01/2010 08:26,2.55,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,12/01/2010 08:26,3.39,17850,United Kingdom
C536379,D,Discount,-1,12/01/2010 09:41,27.5,14527,United Kingdom
536380,22086,PAPER CHAIN,-2,12/01/2010 09:41,2.1,14527,United Kingdom
536381,22086,PAPER CHAIN,2,12/01/2010 09:45,2.1,,United Kingdom
536382,22086,PAPER CHAIN,3,12/01/2010 10:00,2.1,14527.0,France
536382,22086,,1,12/01/2010 10:00,2.1,14527.0,France
536383,22086,PAPER CHAIN,1,31/12/2010 10:00,2.1,14527.0,France
"""
MAPPING = dict(invoice="InvoiceNo", item="StockCode", description="Description",
               quantity="Quantity", timestamp="InvoiceDate", price="UnitPrice",
               customer="CustomerID", country="Country", timestamp_format="%m/%d/%Y %H:%M")


@pytest.fixture
def movielens_dir(tmp_path: Path) -> Path:
    (tmp_path / "u.data").write_text(U_DATA)
    (tmp_path / "u.item").write_text(U_ITEM, encoding="latin-1")
    (tmp_path / "u.genre").write_text(U_GENRE)
    return tmp_path


def test_movielens_ratings_become_purchases_with_the_stars_in_context(movielens_dir):
    batch = import_movielens(movielens_dir / "u.data")
    first = batch.events.iloc[0]
    assert (first["customer_id"], first["item_id"], first["event_type"]) == ("u196", "m242",
                                                                             "purchase")
    assert first["timestamp"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert json.loads(first["context"]) == {"rating": 3}
    assert len(batch.customers) == 2


def test_movielens_titles_and_genres_come_from_u_item(movielens_dir):
    items = import_movielens(movielens_dir / "u.data").items.set_index("item_id")
    assert items.loc["m242", "title"] == "Kolya (1996)"
    assert items.loc["m242", "category"] == "movies/comedy"
    assert items.loc["m302", "category"] == "movies/crime"


def test_movielens_ratings_csv_is_read_too(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    batch = import_movielens(path)
    assert batch.events["item_id"].tolist() == ["m31", "m1029"]
    assert json.loads(batch.events["context"].iloc[0]) == {"rating": 2.5}


def test_importing_movielens_twice_stores_nothing_new(movielens_dir, warehouse):
    batch = import_movielens(movielens_dir / "u.data")
    assert warehouse.append_events(batch.events).added == 3
    again = import_movielens(movielens_dir / "u.data")
    assert warehouse.append_events(again.events).added == 0


def test_a_movielens_csv_without_its_columns_is_refused(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,movie\n1,2\n")
    with pytest.raises(DataFileError, match="missing column\\(s\\) 'movieId', 'rating', "
                                            "'timestamp', 'userId'"):
        import_movielens(path)


def test_cdnow_lines_become_purchases_of_the_generic_cd(tmp_path):
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(" customer_id  date number_of_cds  dollar_value\r\n"
                    " 00001 19970101  1   11.77\r\n 00002 19970112  5   77.00\r\n")
    batch = import_cdnow(path)
    events = batch.events
    assert events["customer_id"].tolist() == ["cd1", "cd2"]
    assert events["item_id"].unique().tolist() == [CDNOW_ITEM]
    assert events["quantity"].tolist() == [1, 5]
    assert events["price"].tolist() == [11.77, 15.4]
    assert events["timestamp"].iloc[1] == pd.Timestamp("1997-01-12", tz="UTC")


def test_transactions_skip_anonymous_and_unreadable_rows_by_rule_with_examples(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(INVOICES)
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    assert dict(batch.skipped) == {
        "cancellation or return with no earlier purchase of the item by the customer": 2,
        "no customer ('CustomerID' empty)": 1,
        "'InvoiceDate' is not a date in format %m/%d/%Y %H:%M": 1,
    }
    assert batch.rows_read == 8
    assert len(batch.events) == 4
    assert ("skipped 1 row(s): 'InvoiceDate' is not a date in format %m/%d/%Y %H:%M "
            "(e.g. '31/12/2010 10:00')") in batch.describe()


def with_lines(*lines: str) -> str:
    return INVOICES.splitlines()[0] + "\n" + "\n".join(lines) + "\n"


def test_a_cancellation_removes_the_purchase_it_reverses(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536365,85123A,HEART,6,12/01/2010 08:26,2.55,17850,UK",
                               "536366,22086,CHAIN,2,12/01/2010 08:30,2.10,17850,UK",
                               "C536370,85123A,HEART,-6,12/01/2010 09:00,2.55,17850,UK"))
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    assert batch.events["item_id"].tolist() == ["22086"]
    assert "netted 1 cancellation or return line(s) against earlier purchases: 1 purchase " \
           "line(s) removed, 0 reduced" in batch.describe()


def test_a_partial_return_reduces_the_latest_earlier_purchase(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536365,85123A,HEART,6,12/01/2010 08:26,2.55,17850,UK",
                               "536380,85123A,HEART,4,12/02/2010 08:26,2.55,17850,UK",
                               "536390,85123A,HEART,-5,12/03/2010 08:26,2.55,17850,UK"))
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    assert batch.events[["event_id", "quantity"]].values.tolist() == [["tx-536365-85123A-0", 5]]


def test_a_return_before_any_purchase_is_counted_not_netted(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536390,85123A,HEART,-1,12/01/2010 08:00,2.55,17850,UK",
                               "536391,85123A,HEART,2,12/01/2010 09:00,2.55,17850,UK"))
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    assert batch.events["quantity"].tolist() == [2]
    assert batch.skipped["cancellation or return with no earlier purchase of the item by the "
                         "customer"] == 1


def test_returns_can_be_skipped_instead_of_netted(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536365,85123A,HEART,6,12/01/2010 08:26,2.55,17850,UK",
                               "C536370,85123A,HEART,-6,12/01/2010 09:00,2.55,17850,UK"))
    batch = import_transactions(path, TransactionMapping(**MAPPING, returns="skip"))
    assert batch.events["quantity"].tolist() == [6]
    assert batch.skipped == {"cancelled invoice (number starts with 'C')": 1}


def test_codes_that_are_not_products_are_excluded_by_pattern(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536365,85123A,HEART,6,12/01/2010 08:26,2.55,17850,UK",
                               "536365,POST,POSTAGE,1,12/01/2010 08:26,18.0,17850,UK",
                               "536365,BANK CHARGES,Bank Charges,1,12/01/2010 08:26,15,17850,UK"))
    mapping = TransactionMapping(**MAPPING, exclude_items=["POST", "BANK CHARGES", "D"])
    batch = import_transactions(path, mapping)
    assert batch.events["item_id"].tolist() == ["85123A"]
    assert batch.skipped == {"not a product (item code matches exclude_items)": 2}
    assert batch.samples["not a product (item code matches exclude_items)"] == [
        "POST", "BANK CHARGES"]


def test_an_exclusion_that_is_not_a_regular_expression_is_named():
    with pytest.raises(DataFileError, match="exclude_items.*'\\[POST' is not a regular expression"):
        TransactionMapping.parse({**MAPPING, "exclude_items": ["[POST"]})


@pytest.mark.parametrize("description", ["nan", "", "NaN"])
def test_an_item_without_a_description_is_titled_by_its_code(tmp_path, description):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines(f"536365,85123A,{description},6,12/01/2010 08:26,2.55,17850,UK"))
    items = import_transactions(path, TransactionMapping(**MAPPING)).items
    assert items.set_index("item_id").loc["85123A", "title"] == "85123A"


def test_a_file_where_no_row_is_a_sale_is_an_error_that_shows_what_failed(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(INVOICES)
    mapping = TransactionMapping(**{**MAPPING, "timestamp_format": "%Y-%m-%d %H:%M"})
    with pytest.raises(DataFileError) as error:
        import_transactions(path, mapping)
    message = str(error.value)
    assert "none of its 8 rows is a sale that can be imported" in message
    assert "'InvoiceDate' is not a date in format %Y-%m-%d %H:%M (e.g. '12/01/2010 08:26', " \
           "'12/01/2010 09:41', '12/01/2010 10:00')" in message


def test_rows_dated_in_the_future_are_skipped_and_say_why(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(with_lines("536365,85123A,HEART,6,12/01/2010 08:26,2.55,17850,UK",
                               "536366,22086,CHAIN,2,12/01/2031 08:30,2.10,17850,UK"))
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    assert batch.events["item_id"].tolist() == ["85123A"]
    [reason] = batch.skipped
    assert reason.startswith("'InvoiceDate' is a time no later than ")
    assert batch.samples[reason] == ["12/01/2031 08:30"]


def test_two_lines_of_the_same_product_on_one_invoice_are_two_events(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(INVOICES)
    events = import_transactions(path, TransactionMapping(**MAPPING)).events
    chain = events[events["session_id"] == "inv-536382"]
    assert chain["event_id"].tolist() == ["tx-536382-22086-0", "tx-536382-22086-1"]
    assert chain["quantity"].tolist() == [3, 1]
    assert chain["customer_id"].unique().tolist() == ["14527"]


def test_products_found_only_in_transactions_become_catalog_items(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(INVOICES)
    batch = import_transactions(path, TransactionMapping(**MAPPING))
    items = batch.items.set_index("item_id")
    assert items.loc["22086", "title"] == "PAPER CHAIN"
    assert items.loc["85123A", "price"] == 2.55
    customers = batch.customers.set_index("customer_id")
    assert customers.loc["14527", "region"] == "France"


def test_a_mapping_file_in_toml_is_read(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text("[mapping]\n" + "\n".join(f'{k} = "{v}"' for k, v in MAPPING.items()))
    assert TransactionMapping.from_file(path) == TransactionMapping(**MAPPING)


def test_a_mapping_that_lacks_a_field_names_it():
    with pytest.raises(DataFileError, match="mapping: 'price': Field required"):
        TransactionMapping.parse({k: v for k, v in MAPPING.items() if k != "price"})


def test_a_mapping_that_names_a_column_the_file_lacks_lists_what_it_has(tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(INVOICES)
    mapping = TransactionMapping(**{**MAPPING, "price": "Price"})
    with pytest.raises(DataFileError, match="missing column\\(s\\) 'Price'; the file has: "
                                            "InvoiceNo, StockCode"):
        import_transactions(path, mapping)
