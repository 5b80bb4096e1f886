"""The examiner web service: a REST API and a web page over one gallery (``handclip serve``)."""
