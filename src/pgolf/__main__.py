from pgolf.tools.cli import main

raise SystemExit(main())
