"""The watch-folder service: inbox watcher, job workers, commands, metrics, systemd unit."""
