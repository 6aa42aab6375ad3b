"""The event log: envelope, canonical encoding, event bodies and the JetStream stream."""
