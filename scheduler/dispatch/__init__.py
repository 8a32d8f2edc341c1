"""One endpoint's scheduling: the loop (``endpoint``), route calls and batches (``routing``),
route answers to leases (``leasing``), outcomes of attempts (``settle``), one attempt
(``attempt``), caller sessions (``pinned``) and the endpoint's live state (``snapshot``)."""

from scheduler.dispatch.endpoint import EndpointDispatcher

__all__ = ["EndpointDispatcher"]
