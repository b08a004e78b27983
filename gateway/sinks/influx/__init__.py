"""The InfluxDB sink room: committed readings as points, forecasts and flexibility as extras."""
