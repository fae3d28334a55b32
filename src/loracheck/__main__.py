from loracheck.cli import main

raise SystemExit(main())
