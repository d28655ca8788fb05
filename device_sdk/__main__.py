import sys

from device_sdk.cli import main

sys.exit(main())
