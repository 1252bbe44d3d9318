from torchkeeper.cli import main

raise SystemExit(main())
