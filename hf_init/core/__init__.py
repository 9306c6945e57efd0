"""The shared core every study uses: init schemes, exact moments, the record format and its reader,
output folders, the CLI parser, figures."""
