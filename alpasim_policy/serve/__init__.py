"""AlpaSim egodriver gRPC, both directions: any policy as a server, an external server as a policy."""
