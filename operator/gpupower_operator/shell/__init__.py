"""The Kubernetes shell: one module per kind watched (budgets, domains, profile runs), leadership, indexes."""
