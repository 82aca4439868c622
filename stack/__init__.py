"""The embedded local stack (`freshrank up`): used by cli/, bench/ and the tests; imports none of them."""
