"""The stream processor: validate, de-duplicate, aggregate per source partition."""
