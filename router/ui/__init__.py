"""The status page (``GET /ui``): one static HTML file with its script, served by the router."""
