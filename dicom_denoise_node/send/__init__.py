"""④ Send: the C-STORE SCU that delivers derived series to each destination, statuses checked."""
