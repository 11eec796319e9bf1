"""The Textual dashboard (`reelmask tui`). It reads the state database and writes commands; no torch."""
