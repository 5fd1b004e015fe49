"""What a run needs from its host: the run-dir lock, signals, the watchdog, host memory and the compile cache."""
