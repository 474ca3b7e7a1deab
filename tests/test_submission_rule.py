"""The submission file's one row rule: what `write_submission` refuses, `read_submission` refuses
too, with a one-line error naming the file, the line and the problem."""
from __future__ import annotations

import pytest

from xtfclip_lib.evaluation import read_submission, submission_row_problem, write_submission

HEADER = "row_id,query_tracklet,gallery_tracklets\n"
GALLERY = [f"g{i}" for i in range(10)]


def write_text(tmp_path, *rows: str, name: str = "s.csv"):
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def gallery(*names: str) -> str:
    return " ".join([*names, *GALLERY[len(names):]])


# (row text as read, ranking the writer is given, problem both must report)
CASES = {
    "empty query": (f"1,,{gallery()}", [("", GALLERY)], "query name '' must be a non-empty"),
    "query with a space": (f'1,q one,{gallery()}', [("q one", GALLERY)], "query name 'q one'"),
    "tab in a gallery name": (f"1,q,{gallery('a' + chr(9) + 'b')}",
                              [("q", ["a\tb", *GALLERY[1:]])], r"gallery name of query 'q' 'a\\tb'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_refuses_what_the_writer_refuses(case, tmp_path):
    row, ranking, problem = CASES[case]
    with pytest.raises(ValueError, match=problem):
        write_submission(tmp_path / "w.csv", ranking, [])
    path = write_text(tmp_path, row)
    with pytest.raises(ValueError, match=problem) as info:
        read_submission(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and "\n" not in message


def test_the_same_query_twice_is_refused_by_writer_and_reader(tmp_path):
    with pytest.raises(ValueError, match=r"case2_ranking\[0\].*'q' appears a second time "
                                         r"\(first in row_id 1\)"):
        write_submission(tmp_path / "w.csv", [("q", GALLERY)], [("q", GALLERY)])
    assert not (tmp_path / "w.csv").exists()
    path = write_text(tmp_path, f"1,q,{gallery()}", f"2,r,{gallery()}", f"3,q,{gallery()}")
    with pytest.raises(ValueError, match=r"s\.csv:4: query 'q' appears a second time "
                                         r"\(first in row_id 1\)"):
        read_submission(path)


def test_wrong_number_of_gallery_names_names_the_line(tmp_path):
    path = write_text(tmp_path, f"1,q,{gallery()}", "2,r,a b c")
    with pytest.raises(ValueError, match=r"s\.csv:3: query 'r' has 3 gallery names; expected 10"):
        read_submission(path)
    path = write_text(tmp_path, f"1,q,{gallery()}".replace(" ", "  ", 1), name="double.csv")
    with pytest.raises(ValueError, match=r"double\.csv:2: gallery name of query 'q' ''"):
        read_submission(path)


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + f"1,q,{gallery()}\n2,caf\xe9,{gallery()}\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv:3: not UTF-8 text \(byte 0xe9") as info:
        read_submission(path)
    assert "\n" not in str(info.value)


def test_a_written_file_reads_back_and_the_rule_accepts_valid_rows(tmp_path):
    path = write_submission(tmp_path / "ok.csv", [("q1", GALLERY), ("q2", [*GALLERY, "extra"])],
                            [("q3", GALLERY)])
    table = read_submission(path)
    assert table["query_tracklet"].tolist() == ["q1", "q2", "q3"]
    assert submission_row_problem("q4", GALLERY, {"q1": 1}) is None
    assert "appears a second time" in submission_row_problem("q1", GALLERY, {"q1": 1})
