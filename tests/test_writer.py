import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.pipeline import parts, writer
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.render import OUTPUT_SCHEMA


def make_part(tmp_path, task, n, batch=1000, dropped=()):
    rows = [{"inputs": f"{task} {i}", "targets": "t", "task_source": "m", "task_name": task, "template_type": "zs_noopt",
             "cluster": "c", "template_id": 1, "options": [], "example_id": f"{task}/train/{i}", "references": ["t"]}
            for i in range(n)]
    path = tmp_path / f"{task}{parts.SUFFIX}"
    table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    with parts.PartWriter(path, OUTPUT_SCHEMA) as w:
        for start in range(0, n, batch):
            w.write_table(table.slice(start, batch))
    drop = (np.asarray(sorted(dropped), dtype=np.int64),) if dropped else ()
    return writer.Part(task, (path,), n - len(dropped), drop)


def test_dropped_rows_are_left_out_across_batches(tmp_path):
    """Decontamination marks rows; the writer skips exactly those, wherever the part's batches break."""
    dropped = {0, 299, 300, 301, 999, 4000, 9999}
    part = make_part(tmp_path, "a", 10_000, batch=300, dropped=dropped)
    for interleave in (True, False):
        files = writer.write_split(tmp_path / f"out{interleave}", "train", [part], interleave=interleave, seed=0,
                                   shard_rows=4000)
        table = pa.concat_tables(pq.read_table(tmp_path / f"out{interleave}" / f.path) for f in files)
        ids = [int(e.rsplit("/", 1)[1]) for e in table.column("example_id").to_pylist()]
        assert ids == [i for i in range(10_000) if i not in dropped]


def test_interleave_keeps_each_task_in_order_and_spreads_them(tmp_path):
    parts = [make_part(tmp_path, "a", 3000), make_part(tmp_path, "b", 1000), make_part(tmp_path, "c", 10)]
    files = writer.write_split(tmp_path / "out", "train", parts, interleave=True, seed=0, shard_rows=1500)
    assert [f.path for f in files] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [f.rows for f in files] == [1500, 1500, 1010]
    table = pa.concat_tables(pq.read_table(tmp_path / "out" / f.path) for f in files)
    names = table.column("task_name").to_pylist()
    for task, n in (("a", 3000), ("b", 1000), ("c", 10)):
        ids = [int(e.rsplit("/", 1)[1]) for e, t in zip(table.column("example_id").to_pylist(), names) if t == task]
        assert ids == list(range(n))
    first = names[:400]
    assert 250 <= first.count("a") <= 350 and 70 <= first.count("b") <= 130  # every prefix has the mix
    assert files[0].sha256 == writer.sha256_file(tmp_path / "out" / files[0].path)


def test_interleave_is_seeded(tmp_path):
    parts = [make_part(tmp_path, "a", 50), make_part(tmp_path, "b", 50)]
    assert np.array_equal(writer.interleave_order(parts, 0), writer.interleave_order(parts, 0))
    assert not np.array_equal(writer.interleave_order(parts, 0), writer.interleave_order(parts, 1))


def test_empty_split_still_writes_a_file(tmp_path):
    files = writer.write_split(tmp_path, "eval", [], interleave=False, seed=0, shard_rows=10)
    assert files[0].rows == 0 and pq.read_table(tmp_path / files[0].path).schema.equals(OUTPUT_SCHEMA)


def test_check_output_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FlanbuildError, match="is a file"):
        writer.check_output_path(f)
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    with pytest.raises(FlanbuildError, match="refusing to overwrite"):
        writer.check_output_path(d)
    writer.check_output_path(tmp_path / "new" / "deeper")  # creatable: fine


def test_publish_replaces_old_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mixture.json").write_text("old")
    stage = writer.staging_dir(out)
    (stage / "mixture.json").write_text("new")
    writer.publish(stage, out)
    assert (out / "mixture.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_gathering_several_row_groups_at_once_gives_the_same_files(tmp_path, monkeypatch):
    parts = [make_part(tmp_path, "a", 20_000, dropped={5, 9000}), make_part(tmp_path, "b", 9_000),
             make_part(tmp_path, "c", 4_000)]
    files = {}
    for per_gather in (10**9, 1):  # one row group per gather; three (one per part, up to 8)
        monkeypatch.setattr(writer, "PARTS_PER_GATHER", per_gather)
        out = tmp_path / f"out{per_gather}"
        written = writer.write_split(out, "train", parts, interleave=True, seed=3, shard_rows=10_000)
        files[per_gather] = [(out / f.path).read_bytes() for f in written]
    assert len(files[1]) == 4 and files[1] == files[10**9]
