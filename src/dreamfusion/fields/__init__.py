"""3D fields: density and albedo at points, behind the `Field` protocol."""
