"""The HTTP side of PXE: paths (request path -> file of a set, safely), scripts (the iPXE
scripts it answers with), app (the aiohttp server, its access log, running it)."""
