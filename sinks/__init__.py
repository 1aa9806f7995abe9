"""Writers of raw events, rejections and aggregates into ClickHouse, and the schema they need."""
