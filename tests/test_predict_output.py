"""The prediction file: every rank writes its own rows at its offset of one file, which
appears whole or not at all."""
import pytest

from conftest import RANKS, ROOT, run_mpi
from mpi_dml.errors import UserError
from mpi_dml.io.predictions import _publish, _write_at


def test_unseen_temporary_file_is_named(tmp_path):
    with pytest.raises(UserError, match="which this rank does not see; write predictions"):
        _write_at(str(tmp_path / ".p.csv.x.tmp"), 0, b"1\n", tmp_path / "p.csv")


def test_short_file_is_not_published(tmp_path):
    tmp = tmp_path / ".p.tmp"
    tmp.write_bytes(b"prediction\n1\n")
    with pytest.raises(UserError, match="holds 13 bytes after every rank wrote, not 15"):
        _publish(str(tmp), tmp_path / "p.csv", 15)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("n", RANKS)
def test_every_rank_writes_its_rows_in_order(tmp_path, n):
    out = tmp_path / "out.csv"
    r = run_mpi(n, [ROOT / "tests" / "mpi_scripts" / "write_in_order.py", out])
    assert r.returncode == 0, r.stderr
    want = "rank,row\n" + "".join(f"{rank},{i}\n" for rank in range(n) if rank != 1
                                  for i in range(1000 * (rank + 1)))
    assert out.read_text() == want
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary left
