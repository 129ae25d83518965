"""adabldm runtime: the bulk job and its command line (installed as ``adabldm_engine``)."""
