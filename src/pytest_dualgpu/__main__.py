from __future__ import annotations

from pytest_dualgpu.cli.main import main

raise SystemExit(main())
