"""yrdbus: the event-streaming intelligence bus of the YRD border-inspection agencies."""
