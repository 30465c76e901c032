"""The node policy: which rule applies to an image, the decision the front ends act on, the dry
run ``trustctl explain`` shows, and the answers ``trustctl verify`` prints."""
