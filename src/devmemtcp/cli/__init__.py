"""The devmemtcp command-line tool."""
