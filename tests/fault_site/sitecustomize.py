"""Run at start-up by every Python process whose PYTHONPATH holds this folder (the tests' training
children): installs the trainer hook named by SPACETIME_TEST_FAULT. The variable is the tests'
own; the trainer only knows its hook object (trainer.hooks)."""

import os

if os.environ.get("SPACETIME_TEST_FAULT"):
    from tests.faults import install_from_env

    install_from_env()
