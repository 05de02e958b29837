"""What every part of the local stack shares: processes started and stopped by process group (``processes``), the
stand-ins' JSON logs, SIGTERM handling and publishing (``service``), and the chaos session's fault injection
(``faults``)."""
