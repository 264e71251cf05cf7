from scarkids.cli import main

raise SystemExit(main())
