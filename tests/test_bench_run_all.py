"""bench/run_all.py rewrites only its marked blocks of BENCHMARKS.md and renders the demo summary."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run_all import BENCHES, block, demo_tables, replace_block


def test_replace_block_keeps_the_prose_around_it() -> None:
    text = (
        "# B\n\n## vae\n\n<!-- bench:vae -->\nold table\n<!-- /bench:vae -->\n\nReading: prose.\n"
        "<!-- bench:train -->\nkeep me\n<!-- /bench:train -->\n"
    )
    new = replace_block(text, "vae", block("vae", "| a | b |\n|---|---|\n| 1 | 2 |", 12.3))
    assert "old table" not in new and "| 1 | 2 |" in new and "(12 s)" in new
    assert "Reading: prose." in new and "keep me" in new
    assert new.count("<!-- bench:vae -->") == 1 and new.count("<!-- /bench:vae -->") == 1
    added = replace_block(text, "packing", block("packing", "x", 1.0))
    assert added.startswith(text.rstrip("\n")) and "## packing" in added


def test_every_benchmark_is_listed_and_the_repo_file_has_its_block() -> None:
    text = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text()
    for name in BENCHES:
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, name
    for script in ("bench/pipeline.py", "bench/packing.py", "bench/train.py", "bench/vae.py"):
        assert any(script in cmd for cmd in BENCHES.values()), script


def test_demo_tables_from_a_summary(tmp_path: Path) -> None:
    summary = {
        "stages": {"shard": {"clips": 3, "seconds": 1.5}, "train": {"steps": 9, "seconds": 20}},
        "seconds": 30.2,
        "eval": {
            "colour": 0.5,
            "direction": 0.75,
            "shape": 1 / 3,
            "n": 4,
            "direction_chance": 0.25,
            "travel": 0.3,
            "intact": 0.75,
            "held_out": {
                "n": 2,
                "colour": 1.0,
                "direction": 0.5,
                "shape": 0.0,
                "travel": 0.5,
                "intact": 1.0,
            },
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = demo_tables(tmp_path)
    assert "| shard | clips 3 | 1.5 |" in out and "| **total** | | **30.2** |" in out
    assert "| colour | 50% | 100% | 17% | >= 95% (not met) |" in out
    assert "| direction | 75% | 50% | 25% | >= 90% (not met) |" in out
    assert "| shape | 33% | 0% | 33% | >= 80% (not met) |" in out
    assert "all 4 prompts | 2 held-out" in out
    assert (
        "| travel (of the frame) | 0.30 | 0.50 | - | >= 0.46 (75% of the data's 0.61; not met) |"
        in out
    )
    assert "| intact | 75% | 100% | - | 100% (not met) |" in out
