import sys

from field_agent_broker.cli import main

sys.exit(main())
