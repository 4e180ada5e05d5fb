"""SIPp agent → dialgate → SIPp carrier: policy outcomes on the wire (issue 4 acceptance)."""
