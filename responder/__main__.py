"""Allow ``python -m responder``."""

from responder.entry import main

raise SystemExit(main())
