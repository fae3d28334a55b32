from loracheck._entry import run

raise SystemExit(run())
