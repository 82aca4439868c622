"""The Feast repo: entities, push sources, feature views and services, generated from features/definitions."""
