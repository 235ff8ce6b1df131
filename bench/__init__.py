"""`make bench`: measures what ReqRun adds over calling the upstream directly (not a test)."""
