from prae.cli import main

raise SystemExit(main())
