"""Terminal views of what the commands found: streams, panels, grids, trees and tables, and the JSON records."""
