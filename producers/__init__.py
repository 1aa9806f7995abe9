"""Producers of events into Kafka: the simulator and file ingestion."""
