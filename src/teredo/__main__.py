from teredo.cli import main

raise SystemExit(main())
