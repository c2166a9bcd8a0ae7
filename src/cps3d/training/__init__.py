"""CPS and supervised training on nnU-Net v2 (see ``trainer``), with its configuration, loss and schedules."""
