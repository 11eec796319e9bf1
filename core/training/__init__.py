"""Trainers (`reelmask train KIND`): each yields events the CLI, daemon and TUI present."""
