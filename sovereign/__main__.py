import sys

from sovereign.cli import main  # sets GRPC_VERBOSITY before anything imports grpc

sys.exit(main())
