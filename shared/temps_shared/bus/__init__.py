"""The NATS JetStream bus: topology, publishing, and the consume loop with its ack policy."""
