//! HTTP clients for Entra ID, Partner Center and Microsoft Graph, exact to the wire.
